"""What cgsh and cgctl need: the profile, logins, and the API connection. No printing."""
