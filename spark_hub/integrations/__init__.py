"""Bridges to other training frameworks (optional extras): `spark_hub.integrations.verl`."""
