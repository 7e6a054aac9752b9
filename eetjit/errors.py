"""The exceptions eetjit raises at its boundary: each message names what was wrong, expected and received."""


class EetjitError(Exception):
    """Base class of every error eetjit raises on purpose."""


class ModelError(EetjitError):
    """The model file or graph is malformed, hostile or uses something eetjit cannot run."""


class InputError(EetjitError, ValueError):
    """A feed or generation argument does not fit the model (name, dtype, shape, range)."""


class ExecutionError(EetjitError, RuntimeError):
    """A node failed while running; the message names the node and its op."""
