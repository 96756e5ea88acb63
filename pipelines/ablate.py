"""DVC stage `ablate`: the job radclip.jobs.ablate (its logic, outputs and effective params)."""

from radclip.jobs.ablate import main

if __name__ == "__main__":
    main()
