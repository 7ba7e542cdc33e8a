"""Sensors and schedules. They start running with the daemon (`dagster dev` starts one) unless
FACEPIPE_AUTOMATION=off, which leaves them stopped until switched on in the UI: for browsing or
driving a project by hand without the daemon building anything on its own."""

import os

from dagster import DefaultScheduleStatus, DefaultSensorStatus

AUTOMATION_ENV = "FACEPIPE_AUTOMATION"


def automation_on() -> bool:
    return os.environ.get(AUTOMATION_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def sensor_default() -> DefaultSensorStatus:
    return DefaultSensorStatus.RUNNING if automation_on() else DefaultSensorStatus.STOPPED


def schedule_default() -> DefaultScheduleStatus:
    return DefaultScheduleStatus.RUNNING if automation_on() else DefaultScheduleStatus.STOPPED
