"""Workers: consume task requests, run them with an executor, publish the responses."""
