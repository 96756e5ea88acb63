"""DVC stage `embed_slices`: the job radclip.jobs.embed_slices (its logic, outputs and effective params)."""

from radclip.jobs.embed_slices import main

if __name__ == "__main__":
    main()
