"""DVC stage `pretrain_2d`: the job radclip.jobs.pretrain_2d (its logic, outputs and effective params)."""

from radclip.jobs.pretrain_2d import main

if __name__ == "__main__":
    main()
