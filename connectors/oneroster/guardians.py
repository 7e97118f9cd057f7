"""Turn OneRoster ``agents`` (both directions) into de-duplicated GuardianLink records.

A student lists their parents, guardians and relatives as agents; a parent lists their students. Either
side may be missing, and both may name the same pair. Guardian-side users are remembered while the user
listing streams by (their relation and their students); student-side pairs are resolved afterwards, so
links are emitted after every person, as the engine needs. The relation always comes from the guardian's
own role, never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from connectors.base import GuardianLink, Person, Rejected
from connectors.oneroster.schemas import GUARDIAN_ROLES

StudentAgents = tuple[int | None, str, tuple[str, ...]]  # (CSV line or None, student sourcedId, agent ids)


class GuardianLinker:
    """Collect agents while users stream, then yield the links they describe."""

    def __init__(
        self, *, complete: bool, remember: int | None = None, field: str = "agents", where: str = "users"
    ) -> None:
        """``remember`` caps how many student rows are kept for later (None: no cap).

        Past the cap ``overflowed`` turns true and the caller must hand the student side to :meth:`links`
        itself (the CSV reader reads users.csv again), which keeps memory flat on the largest districts.
        """
        self.complete = complete
        self.field = field
        self.where = where
        self.remember = remember
        self.student_agents_seen = False
        self.overflowed = False
        self._guardians: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._students: list[StudentAgents] = []

    def observe(self, person: Person, agents: tuple[str, ...], line: int | None = None) -> None:
        """Note one user and their agents."""
        if person.role in GUARDIAN_ROLES:
            self._guardians[person.sourced_id] = (person.role, agents)
        elif person.role == "student" and agents:
            self.student_agents_seen = True
            if self.overflowed:
                return
            if self.remember is not None and len(self._students) >= self.remember:
                self.overflowed = True
                self._students = []
                return
            self._students.append((line, person.sourced_id, agents))

    def links(self, student_rows: Iterable[StudentAgents] | None = None) -> Iterator[GuardianLink | Rejected]:
        """Yield each guardian → student link once; ``student_rows`` stands in for remembered student rows."""
        for guardian, (relation, students) in self._guardians.items():
            for student in students:
                yield GuardianLink(guardian, student, relation)
        rows = self._students if student_rows is None else student_rows
        for line, student, agents in rows:
            for guardian in agents:
                known = self._guardians.get(guardian)
                if known is None:
                    if self.complete:
                        at = f"{self.where} line {line}: " if line is not None else ""
                        yield Rejected(
                            "guardian_link",
                            f"{guardian}>{student}",
                            self.field,
                            f"{at}agent {guardian} of student {student} is not a parent, guardian "
                            f"or relative in {self.where}",
                        )
                    # In a delta the agent may simply be unchanged; the link it already has stands.
                    continue
                if student in known[1]:
                    continue  # the guardian's own row already listed this student
                yield GuardianLink(guardian, student, known[0])
