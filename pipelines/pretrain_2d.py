"""DVC stage `pretrain_2d`: runs `radclip pretrain-2d` (logic in the radclip library)."""

from radclip.cli import run_stage

if __name__ == "__main__":
    run_stage("pretrain_2d")
