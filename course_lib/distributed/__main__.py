"""``python -m course_lib.distributed``: the job queue's command line (see ``cli``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
