"""DVC stage `validate`: the job radclip.jobs.validate (its logic, outputs and effective params)."""

from radclip.jobs.validate import main

if __name__ == "__main__":
    main()
