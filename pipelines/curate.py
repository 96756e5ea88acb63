"""DVC stage `curate`: runs `radclip curate` (logic in the radclip library)."""

from radclip.cli import run_stage

if __name__ == "__main__":
    run_stage("curate")
