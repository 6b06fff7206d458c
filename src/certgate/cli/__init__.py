"""Entry points: parsing and printing only; the work happens in `certgate.client`."""
