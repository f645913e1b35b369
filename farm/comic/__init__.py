"""Comic pages and downloads from a job's renders: layout, captions, pages, exports, and the
job-level build that the finalize step and `farm comic` run."""
