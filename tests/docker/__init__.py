"""The docker backend's suite: a federation of real containers (``@pytest.mark.docker``)."""
