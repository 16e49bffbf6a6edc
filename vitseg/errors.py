"""Errors a user can act on. Each carries the CLI exit code (2 config, 3 data, 4 checkpoint, 5 training)."""


class VitsegError(Exception):
    exit_code = 1


class ConfigError(VitsegError, ValueError):
    exit_code = 2


class DataError(VitsegError, ValueError):
    exit_code = 3


class CheckpointError(VitsegError, ValueError):
    exit_code = 4


class TrainingError(VitsegError, RuntimeError):
    exit_code = 5
