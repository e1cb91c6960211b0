"""When the sun rises, sets and culminates at a place: NOAA's solar calculations.

Why our own ~60 lines instead of a dependency
---------------------------------------------
A solar schedule needs one number a day: the UTC instant the sun's centre
crosses a given zenith angle. The well-known NOAA formulas (the "NOAA Solar
Calculator" spreadsheet, after Meeus' *Astronomical Algorithms*) give the
sun's declination and the equation of time from the Julian century; the
sunrise equation then gives the hour angle at that zenith. They are accurate
to well within a minute between the polar circles (about a minute near them,
where the sun crosses the horizon at a shallow angle) -- far finer than a
beat that ticks in seconds needs, and what Celery's schedule (via ``ephem``)
delivers in practice. ``astral`` implements the same formulas; ``ephem`` and
``skyfield`` are full ephemerides with a C extension or data files to
download. Neither is worth a required dependency for this.

Zenith angles (degrees from straight up):

- sunrise / sunset: 90.833, the upper limb touching the horizon (0.833 =
  34' of atmospheric refraction + the sun's 16' semi-diameter);
- civil / nautical / astronomical dawn and dusk: 96, 102, 108 (the centre
  6, 12 and 18 degrees below the horizon);
- solar noon: the sun's transit of the meridian (no zenith involved).

A day's events are those of the *local* calendar day at the longitude: the
date's solar noon is near 12:00 local mean time, its sunrise before it and
its sunset after it, so for an eastern place (Sydney) a day's sunrise may be
the previous day in UTC. Each estimate is refined twice by recomputing the
sun at the estimated instant rather than at noon. Days are sampled one by
one, so within about half a degree of a pole, where the sun's height barely
changes in a day, an event that happens once a year may fall between two
samples and is reported as not happening.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta

__all__ = ["EVENTS", "event_time", "last_event", "next_event"]

#: how far next_event/last_event look: a polar day or night is shorter than a year
LOOK_DAYS = 366
#: event -> (zenith in degrees, -1 before solar noon / +1 after / 0 at it); Celery's names
EVENTS: dict[str, tuple[float, int]] = {
    "dawn_astronomical": (108.0, -1),
    "dawn_nautical": (102.0, -1),
    "dawn_civil": (96.0, -1),
    "sunrise": (90.833, -1),
    "solar_noon": (90.0, 0),
    "sunset": (90.833, +1),
    "dusk_civil": (96.0, +1),
    "dusk_nautical": (102.0, +1),
    "dusk_astronomical": (108.0, +1),
}


def _sun(julian_day: float) -> tuple[float, float]:
    """(declination in degrees, equation of time in minutes) at ``julian_day``; NOAA spreadsheet."""
    t = (julian_day - 2451545.0) / 36525.0  # Julian centuries since J2000.0
    mean_longitude = (280.46646 + t * (36000.76983 + t * 0.0003032)) % 360.0
    mean_anomaly = math.radians(357.52911 + t * (35999.05029 - 0.0001537 * t))
    eccentricity = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)
    centre = (math.sin(mean_anomaly) * (1.914602 - t * (0.004817 + 0.000014 * t))
              + math.sin(2 * mean_anomaly) * (0.019993 - 0.000101 * t)
              + math.sin(3 * mean_anomaly) * 0.000289)
    omega = math.radians(125.04 - 1934.136 * t)
    apparent_longitude = math.radians(mean_longitude + centre - 0.00569 - 0.00478 * math.sin(omega))
    mean_obliquity = 23.0 + (26.0 + (21.448 - t * (46.815 + t * (0.00059 - t * 0.001813))) / 60.0) / 60.0
    obliquity = math.radians(mean_obliquity + 0.00256 * math.cos(omega))
    declination = math.asin(math.sin(obliquity) * math.sin(apparent_longitude))

    y = math.tan(obliquity / 2) ** 2
    l0 = math.radians(mean_longitude)
    e = eccentricity
    equation_of_time = (y * math.sin(2 * l0) - 2 * e * math.sin(mean_anomaly)
                        + 4 * e * y * math.sin(mean_anomaly) * math.cos(2 * l0)
                        - 0.5 * y * y * math.sin(4 * l0) - 1.25 * e * e * math.sin(2 * mean_anomaly))
    return math.degrees(declination), 4.0 * math.degrees(equation_of_time)


def _hour_angle(latitude: float, declination: float, zenith: float) -> float | None:
    """Degrees from solar noon at which the sun reaches ``zenith``; None if it never does that day."""
    lat, dec = math.radians(latitude), math.radians(declination)
    # cos(latitude) is ~6e-17, not 0, at the poles: no division by zero, just "never".
    cos_hour_angle = math.cos(math.radians(zenith)) / (math.cos(lat) * math.cos(dec)) - math.tan(lat) * math.tan(dec)
    if not -1.0 <= cos_hour_angle <= 1.0:
        return None  # polar day (< -1) or polar night (> 1) for this zenith
    return math.degrees(math.acos(cos_hour_angle))


def event_time(event: str, day: date, latitude: float, longitude: float) -> datetime | None:
    """The UTC instant of ``event`` on the local calendar ``day``; None if it does not happen.

    ``latitude`` is north-positive, ``longitude`` east-positive, in degrees.
    """
    if event not in EVENTS:
        raise ValueError(f"event {event!r} is not one of {', '.join(EVENTS)}")
    zenith, side = EVENTS[event]
    midnight = day.toordinal() + 1721424.5  # Julian day of the day's 00:00 UTC
    minutes = 720.0 - 4.0 * longitude  # minutes after 00:00 UTC; first guess: mean solar noon
    for _ in range(3):
        declination, equation_of_time = _sun(midnight + minutes / 1440.0)
        noon = 720.0 - 4.0 * longitude - equation_of_time
        hour_angle = 0.0 if side == 0 else _hour_angle(latitude, declination, zenith)
        if hour_angle is None:
            return None
        minutes = noon + side * 4.0 * hour_angle
    return datetime.combine(day, time(), UTC) + timedelta(seconds=round(minutes * 60))


def _days_around(moment: datetime, longitude: float, offsets: range) -> Iterator[date]:
    """Local calendar days near ``moment``; a day's events fall within about 12 hours of its noon."""
    today = (moment + timedelta(hours=longitude / 15)).date()  # local mean solar time
    return (today + timedelta(days=offset) for offset in offsets)


def next_event(event: str, moment: datetime, latitude: float, longitude: float) -> datetime | None:
    """The first ``event`` strictly after the aware ``moment``; days without it (polar day or
    night) are skipped; None if it does not happen within ``LOOK_DAYS``."""
    for day in _days_around(moment, longitude, range(-1, LOOK_DAYS + 2)):
        at = event_time(event, day, latitude, longitude)
        if at is not None and at > moment:
            return at
    return None


def last_event(event: str, moment: datetime, latitude: float, longitude: float) -> datetime | None:
    """The latest ``event`` at or before the aware ``moment`` (None beyond ``LOOK_DAYS``)."""
    for day in _days_around(moment, longitude, range(1, -LOOK_DAYS - 2, -1)):
        at = event_time(event, day, latitude, longitude)
        if at is not None and at <= moment:
            return at
    return None
