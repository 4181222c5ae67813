"""Load with real processes: concurrent associations into ``medversa serve``; the small CI
version of ``medversa bench load`` (same code: :func:`medversa.benchmarks.node_load.bench_load`)."""

from __future__ import annotations

from medversa.benchmarks.node_load import bench_load

from .reliability import record_case

#: Bounds on resident memory (MB): serve holds no model and buffers no data set; the worker holds
#: the tiny model and one study at a time. Measured on 2 CPUs: about 125 and 1,050 MB.
SERVE_RSS_LIMIT_MB = 400
WORKER_RSS_LIMIT_MB = 2500


def test_concurrent_associations_lose_nothing_and_process_every_study_once():
    report = bench_load(associations=5, instances=200, studies=10, size=64, idle_seconds=5.0, timeout_s=360)
    assert report["associations"] == 5 and not report["sender_errors"], report
    assert report["instances_sent"] == report["acknowledged"] == 200, report
    assert report["lost"] == 0 and report["recorded"] == 200, report
    assert report["studies_processed"] == report["studies_with_sr"] == 10, report
    assert report["processed"] == 200, report
    assert report["duplicate_jobs"] == 0 and report["duplicate_srs"] == 0 and report["failed_jobs"] == 0, report
    rss = report["peak_rss_mb"]
    assert rss["serve"] is not None and rss["serve"] < SERVE_RSS_LIMIT_MB, report
    assert rss["worker"] is not None and rss["worker"] < WORKER_RSS_LIMIT_MB, report
    record_case("load", "5 concurrent associations, 200 instances in 10 studies into serve",
                "every study processed once, nothing lost", instances_sent=report["instances_sent"],
                acknowledged=report["acknowledged"], processed=report["processed"], lost=report["lost"],
                studies=report["studies_processed"], duplicates=report["duplicate_jobs"] + report["duplicate_srs"],
                wall_s=report["wall_s"], peak_rss_mb=rss["serve"], worker_peak_rss_mb=rss["worker"])


def test_concurrent_senders_send_each_export_once(tmp_path):
    """``serve``'s scheduler and a worker finishing a job both deliver due exports: each due row
    goes out once (two contexts: two connections to the job store, as two processes have)."""
    import threading

    import pydicom
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from sqlalchemy import select

    from medversa.benchmarks.peers import free_port
    from medversa.node.job_store import Export, ExportState, Job, JobState, Study, utcnow
    from medversa.node.jobs import deliver_due
    from medversa.node.node_context import NodeContext
    from medversa.node.settings import load_settings

    from . import dicom_factory as f

    received: list[str] = []
    port = free_port()
    receiver = AE("RECEIVER")
    receiver.supported_contexts = AllStoragePresentationContexts
    server = receiver.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, lambda event: received.append(str(event.dataset.SOPInstanceUID)) or 0x0000)])
    settings = load_settings(None, data_dir=tmp_path / "data",
                             **{"export.destinations": [f"RECEIVER@127.0.0.1:{port}"]})
    contexts = [NodeContext(settings) for _ in range(2)]
    results = [f.make_cr(16, 16) for _ in range(20)]
    paths = f.write_datasets(results, settings.results_dir)
    with contexts[0].store.session() as s:
        study = Study(study_instance_uid=pydicom.uid.generate_uid())
        job = Job(study=study, version=1, tasks=["vqa"], queue="q", state=JobState.EXPORTING, finished_at=utcnow())
        s.add_all([study, job])
        s.flush()
        for ds, path in zip(results, paths, strict=True):
            s.add(Export(job_id=job.id, sop_instance_uid=str(ds.SOPInstanceUID), kind="SR", path=str(path),
                         destination=f"RECEIVER@127.0.0.1:{port}"))
    start = threading.Barrier(2)
    delivered: list[int] = []

    def send(ctx: NodeContext) -> None:
        start.wait()
        delivered.append(deliver_due(ctx))

    threads = [threading.Thread(target=send, args=(ctx,)) for ctx in contexts]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        server.shutdown()
    assert sum(delivered) == 20 and sorted(received) == sorted(str(ds.SOPInstanceUID) for ds in results)
    with contexts[0].store.session() as s:
        exports = list(s.scalars(select(Export)))
    assert all(e.state is ExportState.DELIVERED and e.attempts == 1 for e in exports)
    record_case("load", "two senders deliver the same due exports at once", "each export sent once",
                exports=len(exports), received=len(received), duplicates=len(received) - len(set(received)))
