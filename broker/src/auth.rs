//! Authentication (users with hashed passwords) and authorisation (topic ACLs).
