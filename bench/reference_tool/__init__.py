"""A minimal pylti1p3 Flask tool and a bare Flask app: the baseline and the floor of bench/launch_perf.py."""
