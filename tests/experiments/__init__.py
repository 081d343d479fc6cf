"""Tests of nemo_erprm.experiments."""
