"""Small runnable programs built on course_lib, run by the notebooks in subprocesses."""
