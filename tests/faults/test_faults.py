"""The chat and the workbench survive any sequence of user actions and server faults
(machines.py). Bounded here (`make test`); `make soak` runs the same machines for long
(HALO_SOAK_EXAMPLES, HALO_SOAK_STEPS) and reports how many steps ran clean."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.faults.machines import STEPS, ChatMachine, WorkbenchMachine, soak_settings

SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck), **soak_settings())


def test_the_chat_survives_any_sequence_of_actions_and_faults() -> None:
    before = STEPS["chat"]
    run_state_machine_as_test(ChatMachine, settings=SETTINGS)
    print(f"\nchat: {STEPS['chat'] - before} steps ran clean")


def test_the_workbench_survives_any_sequence_of_actions_and_faults() -> None:
    before = STEPS["workbench"]
    run_state_machine_as_test(WorkbenchMachine, settings=SETTINGS)
    print(f"\nworkbench: {STEPS['workbench'] - before} steps ran clean")
