"""Typed columns and quarantine reasons from text, as DuckDB expressions built from fixed specs.

The specs below are constants of this package (never user input), so the SQL they produce is as
fixed as if it were written out by hand; it is generated only to keep the rules in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

REASON_VALUE_CHARS = 40

# Each column is parsed once, into a column of this prefix, by `parsed_columns_sql`; the typed value
# and every quarantine rule read that column rather than re-running the regexes per rule.
PARSED_PREFIX = "__parsed_"

# ASCII decimal digits only: DuckDB's cast would also take '1e3', '1_000', 'nan' and 'inf'.
DECIMAL_PATTERN = r"\s*[+-]?[0-9]+(\.[0-9]*)?\s*"

# Control characters a stored text value may not hold, as the inside of an RE2 class (escapes, so
# the SQL itself holds none): C0 controls and DEL, except tab, line feed and carriage return, the
# whitespace a quoted CSV field may hold, which normalisation turns into one space. C1 controls
# (U+0080 to U+009F) are not refused: the Kaggle catalog itself has one (product 45877, 'Cr\x8feme').
CONTROL_CHARACTERS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"


@dataclass(frozen=True)
class WholeNumber:
    """A whole number in [minimum, maximum]; `8` and `8.0` are accepted, `8.5` and `eight` are not."""

    name: str
    minimum: int
    maximum: int
    required: bool = True
    sql_type: str = "INTEGER"

    def typed(self) -> str:
        number = self._number
        return (
            f"CASE WHEN {number} = floor({number}) AND {number} BETWEEN {self.minimum} AND {self.maximum} "
            f"THEN {number}::{self.sql_type} END AS {self._col}"
        )

    def reasons(self) -> list[str]:
        number = self._number
        missing = f"nullif(trim({self._col}), '') IS NULL"
        rules = []
        if self.required:
            rules.append(f"WHEN {missing} THEN '{self.name}: missing'")
        else:
            number = f"CASE WHEN {missing} THEN NULL ELSE {number} END"
        present = "" if self.required else f"NOT ({missing}) AND "
        rules += [
            f"WHEN {present}{number} IS NULL THEN '{self.name}: not a number: ' || {_quoted(self._col)}",
            f"WHEN {number} <> floor({number}) THEN '{self.name}: not a whole number: ' || {_quoted(self._col)}",
            f"WHEN NOT ({number} BETWEEN {self.minimum} AND {self.maximum}) "
            f"THEN '{self.name}: out of range {self.minimum}..{self.maximum}: ' || {_quoted(self._col)}",
        ]
        return rules

    def parsed(self) -> str:
        """The value as a DOUBLE (NULL unless plain decimal digits), named for `typed` and `reasons`."""
        return (
            f"CASE WHEN regexp_full_match({self._col}, '{DECIMAL_PATTERN}') "
            f"THEN TRY_CAST(trim({self._col}) AS DOUBLE) END AS {self._number}"
        )

    @property
    def _number(self) -> str:
        return f'"{PARSED_PREFIX}{self.name}"'

    @property
    def _col(self) -> str:
        return f'"{self.name}"'


@dataclass(frozen=True)
class Text:
    """Trimmed, NFC-normalised text with inner runs of whitespace collapsed; optionally one of a set.

    A value holding a control character (`CONTROL_CHARACTERS`) is quarantined, never stored.
    """

    name: str
    allowed: tuple[str, ...] = ()
    lowercase: bool = False
    max_length: int = 500

    def typed(self) -> str:
        return f"{self._normalised} AS {self._col}"

    def reasons(self) -> list[str]:
        # 1-based position, in characters, of the first control character in the value as landed.
        position = f"(length(regexp_extract({self._col}, '^[^{CONTROL_CHARACTERS}]*')) + 1)"
        rules = [
            f"WHEN regexp_matches({self._col}, '[{CONTROL_CHARACTERS}]') "
            f"THEN '{self.name}: contains a control character (' "
            f"|| printf('\\x%02x', ord(substr({self._col}, {position}, 1))) || ' at position ' || {position} "
            f"|| '): ' || {_quoted(self._col)}",
            f"WHEN nullif({self._normalised}, '') IS NULL THEN '{self.name}: missing'",
        ]
        if self.allowed:
            allowed = ", ".join(f"'{value}'" for value in self.allowed)
            rules.append(
                f"WHEN {self._normalised} NOT IN ({allowed}) "
                f"THEN '{self.name}: not one of {'/'.join(self.allowed)}: ' || {_quoted(self._col)}"
            )
        rules.append(
            f"WHEN length({self._normalised}) > {self.max_length} "
            f"THEN '{self.name}: longer than {self.max_length} characters'"
        )
        return rules

    def parsed(self) -> str:
        """Any run of Unicode whitespace (tabs, no-break spaces) becomes one space, then ends are trimmed."""
        text = f"trim(regexp_replace(nfc_normalize({self._col}), '[\\s\\p{{Z}}]+', ' ', 'g'))"
        return f"{f'lower({text})' if self.lowercase else text} AS {self._normalised}"

    @property
    def _normalised(self) -> str:
        return f'"{PARSED_PREFIX}{self.name}"'

    @property
    def _col(self) -> str:
        return f'"{self.name}"'


Column = WholeNumber | Text


def _quoted(column_sql: str) -> str:
    """The value as landed, quoted and cut to REASON_VALUE_CHARS, with its control characters escaped."""
    return f"'''' || {_escaped(f'left({column_sql}, {REASON_VALUE_CHARS})')} || ''''"


def _escaped(text_sql: str) -> str:
    """Each control character written as `\\xNN`, so a reason stays one printable line."""
    return (
        f"array_to_string(list_transform(string_split({text_sql}, ''), lambda __char: "
        f"CASE WHEN regexp_matches(__char, '[{CONTROL_CHARACTERS}]') THEN printf('\\x%02x', ord(__char)) "
        "ELSE __char END), '')"
    )


def parsed_columns_sql(columns: tuple[Column, ...]) -> str:
    """Extra SELECT items parsing each raw column once; `typed_columns_sql` and `quarantine_reason_sql`
    must be evaluated over a relation that has them (`SELECT *, <parsed> FROM raw_table`)."""
    return ", ".join(column.parsed() for column in columns)


def typed_columns_sql(columns: tuple[Column, ...]) -> str:
    """The SELECT list that turns raw text columns into typed ones (NULL where invalid)."""
    return ",\n       ".join(column.typed() for column in columns)


def quarantine_reason_sql(columns: tuple[Column, ...], extra_rules: tuple[str, ...] = ()) -> str:
    """A CASE giving the first broken rule of a raw row, or NULL when the row is valid.

    Unparseable lines come first: their columns are all NULL and the parser's message says why.
    """
    rules = ["WHEN _parse_error IS NOT NULL THEN 'unparseable line: ' || _parse_error"]
    for column in columns:
        rules.extend(column.reasons())
    rules.extend(extra_rules)
    return "CASE\n         " + "\n         ".join(rules) + "\n       END"
