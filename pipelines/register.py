"""DVC stage `register`: the job radclip.jobs.register (its logic, outputs and effective params)."""

from radclip.jobs.register import main

if __name__ == "__main__":
    main()
