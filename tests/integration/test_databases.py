"""The database fixtures reach real SQLite and PostgreSQL, one fresh database per test."""

from sqlmodel import Field, Session, SQLModel, create_engine, func, select


class Probe(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str


def test_each_test_gets_a_fresh_working_database(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        SQLModel.metadata.create_all(engine, tables=[SQLModel.metadata.tables["probe"]])
        with Session(engine) as session:
            assert session.exec(select(func.count()).select_from(Probe)).one() == 0
            session.add(Probe(name="x"))
            session.commit()
            assert session.exec(select(func.count()).select_from(Probe)).one() == 1
    finally:
        engine.dispose()
