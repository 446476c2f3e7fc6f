"""The database fixtures reach real SQLite and PostgreSQL, one fresh database per test."""

from sqlalchemy import text
from sqlmodel import Field, Session, SQLModel, create_engine


class Probe(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str


def test_each_test_gets_a_fresh_working_database(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        SQLModel.metadata.create_all(engine, tables=[Probe.__table__])  # type: ignore[list-item]
        with Session(engine) as session:
            assert session.exec(text("SELECT count(*) FROM probe")).one()[0] == 0  # type: ignore[call-overload]
            session.add(Probe(name="x"))
            session.commit()
            assert session.exec(text("SELECT count(*) FROM probe")).one()[0] == 1  # type: ignore[call-overload]
    finally:
        engine.dispose()
