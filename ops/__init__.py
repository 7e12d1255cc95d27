"""Operations helpers: local Kafka, Redis and PostgreSQL without Docker (see ops.services)."""
