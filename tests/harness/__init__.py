"""Test support shared by the unit, integration and lab suites: real components and the fake cloud API."""
