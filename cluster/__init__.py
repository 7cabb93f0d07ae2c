"""What every process shares, importing nothing of ours: starting or joining Ray with the project's settings
(`runtime`), locations and local copies of remote folders (`files`), structured logs (`logs`); and the container
image (Dockerfile) and VM launcher config the cluster runs."""
