import pytest

from cluster.files import absolute, is_uri, local_copy, read_text


def test_local_copy_of_a_local_path_or_file_uri_is_the_path(tmp_path):
    assert local_copy(str(tmp_path)) == str(tmp_path)
    assert local_copy(f"file://{tmp_path}") == str(tmp_path)


def test_an_unknown_scheme_is_refused_naming_it():
    with pytest.raises(Exception, match="Unrecognized filesystem type in URI: nope://bucket/x"):
        local_copy("nope://bucket/x")


def test_locations_are_uris_only_when_they_start_with_a_scheme(tmp_path):
    assert is_uri("s3://bucket/x") and is_uri("file:///tmp") and not is_uri("/a/b://c") and not is_uri("rel/x")
    assert absolute("s3://bucket/x/") == "s3://bucket/x"
    assert absolute(f"{tmp_path}/a/../b") == f"{tmp_path}/b"
    assert absolute(f"file://{tmp_path}/a/../b") == f"{tmp_path}/b"


def test_read_text_of_a_local_file(tmp_path):
    (tmp_path / "c.yaml").write_text("name: x\n")
    assert read_text(str(tmp_path / "c.yaml")) == read_text(f"file://{tmp_path}/c.yaml") == "name: x\n"
