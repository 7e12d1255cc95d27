"""Wire contracts (pydantic v2) and SQL tables (SQLAlchemy 2) shared by every stage."""

from schemas.news import DeadLetter, NewsItem, Prediction, ScoredItem

__all__ = ["DeadLetter", "NewsItem", "Prediction", "ScoredItem"]
