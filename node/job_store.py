"""The job store (SQLAlchemy): studies, instances, jobs, exports and the audit trail.

SQLite in WAL mode by default (one file in the data folder, safe for the SCP thread,
the scheduler and the embedded worker), a PostgreSQL URL as an option. Rows are the
source of truth for what was received, processed and delivered: spool files can be
rebuilt into a job from them after a crash, and nothing is deleted before its rows
say it is done and delivered.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class StudyState(str, enum.Enum):
    RECEIVING = "RECEIVING"   # instances arriving; completion not decided
    QUEUED = "QUEUED"         # a job version is queued or running
    DONE = "DONE"             # latest job version finished
    PURGED = "PURGED"         # spool files removed by retention (rows kept)


class JobState(str, enum.Enum):
    RECEIVED = "RECEIVED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    EXPORTING = "EXPORTING"
    DONE = "DONE"
    FAILED = "FAILED"
    SUPERSEDED = "SUPERSEDED"  # a later version of the study's job replaced it


class ExportState(str, enum.Enum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    DEAD = "DEAD"              # dead-letter: tries exhausted; `medversa retry` revives it


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    patient_ref: Mapped[str] = mapped_column(String(64), default="")  # hashed patient ID
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    state: Mapped[StudyState] = mapped_column(Enum(StudyState), default=StudyState.RECEIVING)
    is_prior: Mapped[bool] = mapped_column(default=False)
    first_received: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_received: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    #: Instances received since the last job version was created.
    pending_instances: Mapped[int] = mapped_column(Integer, default=0)
    completeness_checked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    instances: Mapped[list[Instance]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study", order_by="Job.version")


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    study_description: Mapped[str] = mapped_column(String(128), default="")
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    #: SR / presentation state that may be a reader's annotation (node/ask.py): "new" until looked at,
    #: then what became of it ("asked", "ignored: why"); None for every other instance.
    annotation: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    study: Mapped[Study] = relationship(back_populates="instances")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("study_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[JobState] = mapped_column(Enum(JobState), default=JobState.RECEIVED, index=True)
    tasks: Mapped[list] = mapped_column(JSON, default=list)
    #: Standing questions of the routing rules (VQA), answered in the study's SR.
    questions: Mapped[list | None] = mapped_column(JSON, default=list, nullable=True)
    queue: Mapped[str] = mapped_column(String(64), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    notes: Mapped[list] = mapped_column(JSON, default=list)
    prior_study_uid: Mapped[str] = mapped_column(String(64), default="")
    #: An ask job (node/ask.py: a reader's annotation object or `medversa ask`): what is asked; None for
    #: the study's own analysis. Ask jobs never supersede, nor are superseded by, the study's jobs.
    ask: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    study: Mapped[Study] = relationship(back_populates="jobs")
    exports: Mapped[list[Export]] = relationship(back_populates="job")

    @property
    def key(self) -> str:
        """Result UIDs derive from this: the same job version always writes the same objects."""
        return f"{self.study.study_instance_uid}:job{self.id}:v{self.version}"


class Export(Base):
    __tablename__ = "exports"
    __table_args__ = (UniqueConstraint("job_id", "sop_instance_uid", "destination"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    destination: Mapped[str] = mapped_column(String(128))
    state: Mapped[ExportState] = mapped_column(Enum(ExportState), default=ExportState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    last_status: Mapped[str] = mapped_column(String(256), default="")
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    job: Mapped[Job] = relationship(back_populates="exports")


class AuditEvent(Base):
    """IHE ATNA-style trail: who connected, what was received, what was exported."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(32), index=True)
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    peer: Mapped[str] = mapped_column(String(128), default="")
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        from pathlib import Path

        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record) -> None:  # pragma: no cover - exercised by every sqlite test
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


def add_missing_columns(engine: Engine) -> list[str]:
    """Add columns a newer release defines to tables an older one created; returns what was added.

    ``create_all`` creates missing tables but never alters existing ones. New columns are always
    nullable (or defaulted in Python), so adding them is safe on SQLite and PostgreSQL alike.
    """
    from sqlalchemy import inspect, text

    inspector = inspect(engine)
    added = []
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            if not inspector.has_table(table.name):
                continue
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have:
                    kind = column.type.compile(dialect=engine.dialect)
                    conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
                    added.append(f"{table.name}.{column.name}")
    return added


class Store:
    """Engine + session factory; ``with store.session() as s:`` commits or rolls back."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        Base.metadata.create_all(self.engine)
        add_missing_columns(self.engine)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._factory() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def audit(self, event: str, outcome: str = "success", session: Session | None = None, **fields: str) -> None:
        """Record an audit event; inside an open ``session`` it joins that transaction
        (a second writer on SQLite would wait for the first)."""
        if session is not None:
            session.add(AuditEvent(event=event, outcome=outcome, **fields))
            return
        with self.session() as s:
            s.add(AuditEvent(event=event, outcome=outcome, **fields))

    def job(self, session: Session, job_id: int) -> Job:
        job = session.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        return job

    def latest_job(self, session: Session, study: Study) -> Job | None:
        return session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.version.desc())).first()
