

def test_flowers_submit_task_takes_the_priority_and_refuses_a_bad_one(
    published: RecordingPublisher,
) -> None:
    from workers.tasks.ai import submit_ai_request

    with pytest.raises(InvalidRequestError, match="priority must be one of"):
        submit_ai_request.run("hello", priority="urgent")
    assert count(AIRequestRow) == 0
    job_id = submit_ai_request.run("hello", priority="high")
    assert get_job(job_id).priority == "high" and published.jobs == [(job_id, "high")]
