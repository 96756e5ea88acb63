"""DVC stage `phantoms`: the job radclip.jobs.phantoms (its logic, outputs and effective params)."""

from radclip.jobs.phantoms import main

if __name__ == "__main__":
    main()
