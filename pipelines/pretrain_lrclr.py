"""DVC stage `pretrain_lrclr`: the job radclip.jobs.pretrain_lrclr (its logic, outputs and effective params)."""

from radclip.jobs.pretrain_lrclr import main

if __name__ == "__main__":
    main()
