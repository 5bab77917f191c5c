"""Wrong answers to the exercises of notebook 09."""
import statistics

import numpy as np


def _right_spread(seconds):
    ms = np.asarray(seconds) * 1e3
    return float(np.median(ms)), float(np.percentile(ms, 25)), float(np.percentile(ms, 75))


def _in_seconds(seconds):                              # forgot the milliseconds
    s = np.asarray(seconds)
    return float(np.median(s)), float(np.percentile(s, 25)), float(np.percentile(s, 75))


def _mean(seconds):                                    # mean for the median
    median, p25, p75 = _right_spread(seconds)
    return float(np.mean(seconds) * 1e3), p25, p75


def _exclusive(seconds):                               # statistics' default quantile method
    q1, q2, q3 = statistics.quantiles([t * 1e3 for t in seconds], n=4)
    return q2, q1, q3


def _min_max(seconds):
    ms = [t * 1e3 for t in seconds]
    return statistics.median(ms), min(ms), max(ms)


def _q(ms):
    return _right_spread(np.asarray(ms) / 1e3)


def _inverted(serial_ms, parallel_ms):                 # parallel / serial
    (s, s25, s75), (p, p25, p75) = _q(serial_ms), _q(parallel_ms)
    return p / s, p25 / s75, p75 / s25


def _same_quartiles(serial_ms, parallel_ms):           # p25 / p25 and p75 / p75
    (s, s25, s75), (p, p25, p75) = _q(serial_ms), _q(parallel_ms)
    return s / p, s25 / p25, s75 / p75


def _swapped(serial_ms, parallel_ms):                  # (ratio, high, low)
    (s, s25, s75), (p, p25, p75) = _q(serial_ms), _q(parallel_ms)
    return s / p, s75 / p25, s25 / p75


def _means(serial_ms, parallel_ms):
    (s, s25, s75), (p, p25, p75) = _q(serial_ms), _q(parallel_ms)
    return float(np.mean(serial_ms) / np.mean(parallel_ms)), s25 / p75, s75 / p25


def _spread_over_median(p25, median, p75, earlier):   # p75 / median instead of p75 / p25
    return p75 / median > 1.5 or bool(earlier) and median > 2 * min(earlier)


def _mean_of_earlier(p25, median, p75, earlier):      # the mean, not the lowest, earlier median
    return p75 / p25 > 1.5 or bool(earlier) and median > 2 * sum(earlier) / len(earlier)


def _spread_only(p25, median, p75, earlier):          # the slowdown rule forgotten
    return p75 / p25 > 1.5


def _both_rules(p25, median, p75, earlier):           # "and" where either rule is enough
    return p75 / p25 > 1.5 and (not earlier or median > 2 * min(earlier))


WRONG = {
    "9.1": [_in_seconds, _mean, _exclusive, _min_max],
    "9.2": [_inverted, _same_quartiles, _swapped, _means],
    "9.3": [_spread_over_median, _mean_of_earlier, _spread_only, _both_rules],
}
