"""SDXL base + refiner generation for Atelier: loading, hashing, seeds, batching, tiny test models.

Imports torch, diffusers, transformers (and locates open-clip-torch's CLIP vocabulary); never the
database, Prefect or S3. Public modules: ``engine`` (SDXLEngine, EngineConfig, ImageRequest,
GeneratedImage, ComponentInfo), ``seeds`` (image_seed), ``tiny`` (ensure_tiny_models), ``configs``
(published SDXL 1.0 architectures), ``build`` (random-weight pipelines), ``hashing``, ``invariance``,
``schedulers`` (samplers by name, recorded and rebuilt), ``resolutions`` (SDXL_RESOLUTIONS, preset),
``single_file`` (writing a diffusers folder as an original-layout checkpoint).
"""
