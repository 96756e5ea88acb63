"""DVC stage `evaluate`: the job radclip.jobs.evaluate (its logic, outputs and effective params)."""

from radclip.jobs.evaluate import main

if __name__ == "__main__":
    main()
