from sinkhole.profiles.profile import PROFILE_SCHEMA, SinkProfile, load_profile

__all__ = ["PROFILE_SCHEMA", "SinkProfile", "load_profile"]
