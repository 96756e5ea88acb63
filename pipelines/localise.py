"""DVC stage `localise`: the job radclip.jobs.localise (its logic, outputs and effective params)."""

from radclip.jobs.localise import main

if __name__ == "__main__":
    main()
