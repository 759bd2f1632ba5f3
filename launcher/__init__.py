"""lrjob's launcher: job specs, the CLI, the in-process and Ray + Horovod runners."""
