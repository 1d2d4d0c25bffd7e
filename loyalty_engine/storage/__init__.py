"""The storage layer: SQLAlchemy Core tables, the unit of work and the repositories."""
