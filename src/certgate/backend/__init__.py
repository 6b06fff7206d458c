"""Key-value storage behind one interface (`Backend`); implementations: sqlite."""
