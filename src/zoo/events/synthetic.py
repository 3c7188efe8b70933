"""Synthetic HR/timesheet event log with a known per-field entropy floor (the offline default data).

Each employee is one case: on workdays they clock in at their own start hour, at their home location (or
now and then at a second one), and clock out after 6-10 hours; some days they are absent. Every Friday
they submit the week's timesheet to their manager, who approves it or rejects it (then it is resubmitted
and approved). Reference times are the day (clock events) or the Monday of the week (timesheets) the
event is about; event times are when it happened.

The floor: at every step the generator lists the candidate next events with their probabilities, given
only what the case's recent history shows (the employee's start hour, locations and manager all appear
in the last 20 events). The true predictive probability of a field's value is the total probability of
the candidates sharing that value, so ``-log`` of it for the value that occurred is the best loss any
model can reach on that field for that event, when it predicts fields independently from the history --
exactly what a per-field head does. The DataModule averages these NLLs over the same targets as the
validation loss (``entropy_floor_nats`` in the manifest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from zoo.events.schema import Schema, token_of

HOURS = [6, 7, 8, 9, 10]
HOURS_P = [0.1, 0.2, 0.4, 0.2, 0.1]


@dataclass
class Employee:
    id: str
    home: str
    alt: str
    manager: str
    start_hour: int


def _event(
    kind: str,
    emp: Employee,
    when: datetime,
    ref: datetime,
    location: str = "none",
    hours: float | None = None,
) -> dict[str, Any]:
    manager_acts = kind in ("ApproveTimesheet", "RejectTimesheet")
    return {
        "EventType": kind,
        "ActorRecordId": emp.manager if manager_acts else emp.id,
        "RecipientRecordId": emp.id
        if manager_acts
        else (emp.manager if kind == "SubmitTimesheet" else "none"),
        "LocationRecordId": location,
        "IsTimesheet": int(kind.endswith("Timesheet")),
        "HoursWorked": hours,
        "timestamp": when,
        "reference_time": ref,
    }


class _Case:
    """One employee's timeline: `candidates()` lists (probability, event) for the next event."""

    def __init__(
        self,
        emp: Employee,
        first_monday: datetime,
        n_weeks: int,
        p_absent: float,
        p_alt: float,
        p_reject: float,
    ):
        self.emp, self.p_absent, self.p_alt, self.p_reject = emp, p_absent, p_alt, p_reject
        self.end = first_monday + timedelta(days=7 * n_weeks)
        self.last: dict[str, Any] | None = None
        self.first_monday = first_monday

    def _day_start(self, day: datetime) -> list[tuple[float, dict[str, Any]]]:
        """Clock-in on `day` or a later workday of the same week, or Friday's submission if absent all week."""
        e, out, p_reach = self.emp, [], 1.0
        monday = day - timedelta(days=day.weekday())
        while day.weekday() < 5:
            when = day + timedelta(hours=e.start_hour)
            p_in = p_reach * (1 - self.p_absent)
            out.append((p_in * (1 - self.p_alt), _event("ClockIn", e, when, day, e.home, 0)))
            out.append((p_in * self.p_alt, _event("ClockIn", e, when, day, e.alt, 0)))
            p_reach *= self.p_absent
            if day.weekday() == 4:
                break
            day = day + timedelta(days=1)
        friday = monday + timedelta(days=4)
        out.append((p_reach, _event("SubmitTimesheet", e, friday + timedelta(hours=17), monday)))
        return out

    def candidates(self) -> list[tuple[float, dict[str, Any]]]:
        e, last = self.emp, self.last
        if last is None:
            return self._day_start(self.first_monday)
        kind, when, ref = last["EventType"], last["timestamp"], last["reference_time"]
        day = when.replace(hour=0, minute=0, second=0, microsecond=0)
        if kind == "ClockIn":
            return [
                (p, _event("ClockOut", e, when + timedelta(hours=h), ref, last["LocationRecordId"], h))
                for h, p in zip(HOURS, HOURS_P)
            ]
        if kind == "ClockOut":
            if day.weekday() == 4:
                return [
                    (
                        1.0,
                        _event(
                            "SubmitTimesheet",
                            e,
                            day + timedelta(hours=17) if when.hour < 17 else when + timedelta(hours=1),
                            ref - timedelta(days=ref.weekday()),
                        ),
                    )
                ]
            return self._day_start(day + timedelta(days=1))
        if kind == "SubmitTimesheet":
            resubmission = self.prev_kind == "RejectTimesheet"
            p_rej = 0.0 if resubmission else self.p_reject
            out = [(1 - p_rej, _event("ApproveTimesheet", e, when + timedelta(hours=1), ref))]
            if p_rej:
                out.append((p_rej, _event("RejectTimesheet", e, when + timedelta(hours=1), ref)))
            return out
        if kind == "RejectTimesheet":
            return [(1.0, _event("SubmitTimesheet", e, when + timedelta(hours=1), ref))]
        # ApproveTimesheet: the next week starts
        return self._day_start(ref + timedelta(days=7))

    def run(self, rng: np.random.Generator, schema: Schema) -> tuple[list[dict[str, Any]], list[list[float]]]:
        events, nlls = [], []
        self.prev_kind = None
        while True:
            cands = self.candidates()
            probs = np.array([p for p, _ in cands])
            probs = probs / probs.sum()
            pick = int(rng.choice(len(cands), p=probs))
            chosen = cands[pick][1]
            if chosen["timestamp"] >= self.end:
                break
            prev_time = self.last["timestamp"] if self.last is not None else None
            row = []
            for f in schema.fields:
                tokens = [token_of(f, c, prev_time) for _, c in cands]
                mine = tokens[pick]
                p_val = sum(p for p, t in zip(probs, tokens) if t == mine)
                row.append(-math.log(max(p_val, 1e-12)))
            events.append(chosen)
            nlls.append(row)
            self.prev_kind = self.last["EventType"] if self.last is not None else None
            self.last = chosen
        return events, nlls


def generate_hr(
    schema: Schema,
    n_employees: int = 40,
    n_weeks: int = 20,
    n_locations: int = 6,
    n_managers: int = 5,
    p_absent: float = 0.1,
    p_alt: float = 0.25,
    p_reject: float = 0.2,
    start: str = "2024-01-01",
    seed: int = 0,
) -> tuple[pd.DataFrame, np.ndarray]:
    """(log, nll): the raw log (one case per employee) and, per event and schema field, the true NLL."""
    rng = np.random.default_rng(seed)
    first_monday = datetime.fromisoformat(start).replace(tzinfo=UTC)
    first_monday = first_monday - timedelta(days=first_monday.weekday())
    locations = [f"L{i:02d}" for i in range(n_locations)]
    managers = [f"M{i:02d}" for i in range(n_managers)]
    rows, nll = [], []
    for k in range(n_employees):
        home, alt = rng.choice(locations, size=2, replace=False)
        emp = Employee(
            f"E{k:03d}", str(home), str(alt), str(rng.choice(managers)), int(rng.choice([6, 7, 8, 9]))
        )
        case = _Case(emp, first_monday, n_weeks, p_absent, p_alt, p_reject)
        events, nlls = case.run(rng, schema)
        rows.extend({"case_id": emp.id, **ev} for ev in events)
        nll.extend(nlls)
    df = pd.DataFrame(rows)
    for col in ("timestamp", "reference_time"):
        df[col] = pd.to_datetime(df[col], utc=True)
    # The clock-in candidate minutes are on the hour; jitter only what no field reads (minutes), so the
    # time-to-next regression has a realistic target without touching the floor.
    jitter = pd.to_timedelta(rng.integers(0, 50, size=len(df)), unit="m")
    df["timestamp"] = df["timestamp"] + jitter
    return df, np.asarray(nll, dtype=np.float64).reshape(len(df), len(schema.fields))
