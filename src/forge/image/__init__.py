"""Image generation: a text encoder, diffusion (diffusers UNet + schedulers, classifier-free guidance),
a VAE and a GAN, trained on the image sets of `forge.data.images` and scored by one yardstick."""
