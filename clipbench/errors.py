"""The one exception type for problems a user fixes in their data or config."""


class InputError(ValueError):
    """Bad dataset, checkpoint or config value; the message names the input and the fix."""
