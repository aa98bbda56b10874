"""Watching a deployed model: drift tests against its training reference (``drift``), shifts for
a drift study (``shifts``), their measured false-alarm rate and power (``power``), and the
``workbench monitor`` run that logs them (``monitor``)."""
