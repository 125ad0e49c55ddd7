"""The one exception a user should see: a single line naming the problem and the fix."""


class UserError(Exception):
    """Bad input or an impossible request; the CLI prints `error: <message>` and exits 2."""
