"""Test helpers shared by every test package: real processes on free ports."""
