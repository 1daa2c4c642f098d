"""The paper's repetition thresholds, shared by the keyword judges' repetition rule (shb.judges.keyword,
whose docstring says why these values) and the ``loop`` outcome rule (shb.judges.outcome). A module of
their own so that neither of those two imports the other."""

REPEAT_MIN_CHARS = 8  # characters per repeated unit
REPEAT_MIN_COUNT = 3  # copies back to back
