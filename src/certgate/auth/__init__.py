"""The auth server's logic: its certificate authorities, logins and access decisions."""
