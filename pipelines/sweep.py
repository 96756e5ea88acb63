"""DVC stage `sweep`: the job radclip.jobs.sweep (its logic, outputs and effective params)."""

from radclip.jobs.sweep import main

if __name__ == "__main__":
    main()
