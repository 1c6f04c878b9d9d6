"""The one error type for requests the worker refuses (bad model, version or input)."""


class MlError(Exception):
    """A request the worker refuses; code is one of contracts/ml.json result_errors.

    The worker fails such a job with BullMQ's UnrecoverableError("<code>: <message>") so it is not
    retried, and the ml-bridge reads the code back from that text.
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
